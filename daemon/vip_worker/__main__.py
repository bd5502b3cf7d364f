import sys

from vip_worker.cli import main

sys.exit(main())
