"""The head-start benchmark: recipes, data, training, metrics and reports.

``recipe``  the YAML recipe, validated with field paths in its errors
``overrides`` ``--set KEY=VALUE``: a recipe scaled from the command line before validation
``grid``    a grid of peak learning rates per arm, and the rate each arm keeps
``data``    corpus -> BPE tokenizer -> packed memory-mapped token arrays, cached
``train``   the training loop on Hugging Face Accelerate (importable on its own)
``metrics`` time-to-target, as MLCommons AlgoPerf measures it
``report``  report.md, curves.png and results.json
``run``     the bench itself: sources, growth, arms, seeds, resume
"""
