import sys

from trainchain.cli import main

sys.exit(main())
