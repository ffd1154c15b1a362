import sys

from endo3d.cli.main import main

sys.exit(main())
