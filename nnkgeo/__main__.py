from nnkgeo.cli import main

raise SystemExit(main())
