"""The exact reference: the random tree grammar and its belief propagation.

- `grammar`: the grammar (`random_grammar`, the authors' "legacy" draw) and sampling;
- `bp`: exact belief propagation (marginals, free energy, BP_k).
"""
