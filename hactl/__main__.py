from __future__ import annotations

import sys

from hactl.cli import main

sys.exit(main())
