<?php

use Illuminate\Support\Facades\DB;
use Illuminate\Support\Facades\Route;

// What a deploy checks: which release answered, and that the database works.
Route::get('/api/health', fn () => response()->json([
    'status' => 'ok',
    'release' => basename(realpath(base_path())),
    'laravel' => app()->version(),
    'migrations' => DB::table('migrations')->count(),
]));

Route::get('/api/health/database', fn () => response()->json([
    'status' => DB::select('select 1 as ok')[0]->ok === 1 ? 'ok' : 'failing',
]));
