"""The everyday tools: the `timm-hrnet` command line (predict, validate, models, benchmark, pose, segment).

Model code lives one level up and never imports from here.
"""
