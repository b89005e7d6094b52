<?php

namespace App\Http;

use Illuminate\Foundation\Http\Kernel as BaseKernel;
use Illuminate\Foundation\Http\Middleware\PreventRequestsDuringMaintenance;

class Kernel extends BaseKernel
{
    /** Maintenance mode (`artisan down`) answers 503 to every request. */
    protected $middleware = [PreventRequestsDuringMaintenance::class];

    protected $middlewareGroups = ['web' => [], 'api' => []];
}
