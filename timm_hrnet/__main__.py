"""`python -m timm_hrnet ...` (and `torchrun -m timm_hrnet ...`): the `timm-hrnet` command line."""
import sys

from timm_hrnet.tools.cli import main

sys.exit(main())
