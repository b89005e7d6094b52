<?php
// The framework comes from Debian's php-laravel-framework (on the include_path).
require_once 'Illuminate/autoload.php';

// The app's own classes: App\Foo\Bar => app/Foo/Bar.php.
spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'App\\')) {
        $path = __DIR__.'/../app/'.strtr(substr($class, 4), '\\', '/').'.php';
        if (is_file($path)) {
            require $path;
        }
    }
});
