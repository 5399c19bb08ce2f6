from iap.cli import main

main()
