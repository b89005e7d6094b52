<?php

namespace App\Jobs;

use App\Build;
use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Support\Facades\DB;

/**
 * Records which release's code processed it (the resolved release directory of the
 * worker, and the code's build name) in `job_runs`: proof of what a queue worker runs.
 */
class RecordRelease implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable;

    public function __construct(public string $token)
    {
    }

    public function handle()
    {
        DB::table('job_runs')->insert([
            'token' => $this->token,
            'release' => basename(realpath(base_path())),
            'code' => Build::NAME,
            'host' => gethostname(),
        ]);
    }
}
