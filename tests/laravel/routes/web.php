<?php

use App\Build;
use App\Jobs\RecordRelease;
use Illuminate\Http\Request;
use Illuminate\Support\Facades\DB;
use Illuminate\Support\Facades\Queue;
use Illuminate\Support\Facades\Route;

// What a deploy checks: which release answered (the resolved release directory of the
// code that ran, and that code's build name), and that the database works.
// A release can be made to fail on purpose (tests of canary gates and automatic
// rollback): a FAIL_RATE file in it holds the percentage of answers that are 500 (at
// random); FAIL_EVERY = N fails exactly one answer in N on each host (the 10th, then
// every Nth: a rate the test can count on with a few hundred requests); SLOW_MS makes
// every answer that many milliseconds slower.
Route::get('/api/health', function () {
    $failRate = (int) @file_get_contents(base_path('FAIL_RATE'));
    $failEvery = (int) @file_get_contents(base_path('FAIL_EVERY'));
    $slowMs = (int) @file_get_contents(base_path('SLOW_MS'));
    $release = basename(realpath(base_path()));
    if ($slowMs > 0) {
        usleep($slowMs * 1000);
    }
    $nth = false;
    if ($failEvery > 0) {
        // This host's count of this release's answers (a file under storage, locked).
        $f = fopen(storage_path('framework/health-count-'.$release), 'c+');
        flock($f, LOCK_EX);
        $n = (int) stream_get_contents($f) + 1;
        ftruncate($f, 0);
        rewind($f);
        fwrite($f, (string) $n);
        flock($f, LOCK_UN);
        fclose($f);
        $nth = $n % $failEvery === 10 % $failEvery;
    }
    if ($nth || ($failRate > 0 && mt_rand(1, 100) <= $failRate)) {
        return response()->json(['status' => 'failing', 'release' => $release, 'code' => Build::NAME], 500);
    }
    return response()->json([
        'status' => 'ok',
        'release' => $release,
        'code' => Build::NAME,
        'laravel' => app()->version(),
        'migrations' => DB::table('migrations')->count(),
    ]);
});

Route::get('/api/health/database', fn () => response()->json([
    'status' => DB::select('select 1 as ok')[0]->ok === 1 ? 'ok' : 'failing',
]));

Route::get('/api/health/queue', fn () => response()->json([
    'status' => 'ok',
    'size' => Queue::size(),
]));

// Queues a job that records which release's code processed it (App\Jobs\RecordRelease).
Route::get('/api/queue/record', function (Request $request) {
    $token = (string) $request->query('token', '');
    abort_if($token === '', 422, 'token=… is required');
    RecordRelease::dispatch($token);
    return response()->json(['queued' => $token, 'release' => basename(realpath(base_path()))]);
});

