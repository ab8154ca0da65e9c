from tunelab.entry import main

main()
