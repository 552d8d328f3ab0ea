import sys

from trainchain.cli.main import main

sys.exit(main())
