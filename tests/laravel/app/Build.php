<?php

namespace App;

/** Which tag of the test app this code is: each tag's commit rewrites it. */
final class Build
{
    public const NAME = 'v1';
}
