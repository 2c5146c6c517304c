"""Reading a finished (or running) search: tables, the frontier and its hypervolume, the greedy path,
plots (data apart from drawing), text for people, and exports with their model cards.
"""
