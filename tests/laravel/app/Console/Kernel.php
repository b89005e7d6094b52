<?php

namespace App\Console;

use Illuminate\Foundation\Console\Kernel as ConsoleKernel;
use Illuminate\Support\Facades\Artisan;

class Kernel extends ConsoleKernel
{
    protected function commands()
    {
        // laravel/tinker (psysh) is not packaged by Debian: this stand-in behaves like it
        // where runbook meets it — it needs a terminal, prompts, evaluates what is typed
        // against the booted app, and ends on `exit`.
        Artisan::command('tinker', function () {
            if (! stream_isatty(STDIN)) {
                $this->error('tinker needs a terminal (run it with a TTY)');
                return 1;
            }
            $this->line('Tinker stand-in for release '.basename(base_path()).' ('.\App\Build::NAME.')');
            while (true) {
                $line = readline('>>> ');
                if ($line === false || trim($line) === 'exit') {
                    return 0;
                }
                try {
                    $value = eval('return '.rtrim(trim($line), ';').';');
                    $this->line('= '.var_export($value, true));
                } catch (\Throwable $e) {
                    $this->error(get_class($e).': '.$e->getMessage());
                }
            }
        })->describe('Interact with the application (a stand-in for laravel/tinker)');
    }
}
