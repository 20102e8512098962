"""The acquisition engine, in the parts it is made of.

`runner.Runner` executes a raster plan on an open bench and alone owns what a scan must get
right once: opening the bench and the map file, pause / resume / abort (`handle.ScanHandle`),
the writer thread and line events, and the ``finally`` that leaves the bench safe. It shoots
each raster line with the line procedure the plan names (`plan.PROCEDURES`): `step_and_shoot`
or one of the two in `fly`, each a ``prepare`` (go to the line's start and set it up) and a
``shoot`` step. The procedures move the stage through `stage_motion.StageMotion`, set the DDG
through `ddg_modes.DdgModes`, read and pair the frames with `readout.Readout` and collect the
line's arrays in a `line_record.LineRecord`. The public face is `plumelink.pipeline.engine`.
"""
