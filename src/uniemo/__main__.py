import sys

from uniemo.cli.main import main

sys.exit(main())
