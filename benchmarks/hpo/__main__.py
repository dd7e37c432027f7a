from benchmarks.hpo.run import main

main()
