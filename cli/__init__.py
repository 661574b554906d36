"""The ``lotavec`` command line (click). The only layer that prints or exits."""
