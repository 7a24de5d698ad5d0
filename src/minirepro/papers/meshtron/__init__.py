"""Meshtron: high-fidelity, artist-like 3D mesh generation at scale.

arXiv 2412.09548 (Hao, Romero, Lin, Liu, ...; NVIDIA, 2024).
