import sys

from dmlt_trainer.cli import main

sys.exit(main())
