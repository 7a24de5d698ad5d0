"""What several papers share: model, tokenizers, training, generation, results, reports.

Nothing here imports a paper.
"""
