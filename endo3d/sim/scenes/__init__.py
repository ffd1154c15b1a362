"""Scene kinds: ``colon``, ``airway``, ``tissue`` and ``mesh`` (any mesh file).

Each kind has a frozen ``*Spec`` (its scene-file schema, defaults = the
preset) and a ``build_*`` function that turns a spec into a
:class:`~endo3d.sim.scene.Scene`.
"""
