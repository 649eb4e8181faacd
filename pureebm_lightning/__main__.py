from pureebm_lightning.cli import main

main()
