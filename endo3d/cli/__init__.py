"""The ``endo3d`` command line."""
