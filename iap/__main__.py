from iap.entry import main

main()
