"""The endoscopy simulator: procedural scenes, ray-cast labels, ``endo3d simulate``.

Modules: ``scene`` (specs and the Scene container), ``scenes/`` (colon,
airway, tissue, mesh kinds), ``texture``/``noise`` (appearance), ``motion``
(deformation, rigid parts), ``trajectory`` (camera paths), ``instrument``
(grasper), ``raycast`` (BVHs per frame), ``frame`` (one labelled frame),
``exposure`` (auto-exposure), ``simulate`` (the job).
"""
