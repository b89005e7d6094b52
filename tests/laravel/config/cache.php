<?php

return [
    'default' => env('CACHE_DRIVER', 'file'),
    'stores' => [
        'file' => ['driver' => 'file', 'path' => storage_path('framework/cache/data')],
        // Shared by the fleet: `queue:restart` reaches every worker through it.
        'redis' => ['driver' => 'redis', 'connection' => 'cache'],
    ],
    'prefix' => 'runbook_test',
];
