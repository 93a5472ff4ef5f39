"""edgetile.runtime.options: the command line's options, turned into the library's config objects."""
