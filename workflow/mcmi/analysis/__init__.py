"""Looking at trained networks: t-SNE of their output vectors (Figure 6) and Eigen-CAM maps (Figures 3,
10-13). Each function takes tensors or models and returns arrays; drawing them is the report's job."""
