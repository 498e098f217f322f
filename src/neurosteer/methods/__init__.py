"""The methods: the circuit and its file format (`circuit`), recording and selecting neurons
(`recording`, `selection`), CNA discovery, RelP (`relp`, `relp_pass`), contrast vectors and the
vector methods CAA and MLP-output steering (`contrast`, `baselines`), directional and mean
ablation, and `steer` / `bake` / `save_baked` for a circuit, a list of them or any intervention."""
