from blfs.cli import main

main()
