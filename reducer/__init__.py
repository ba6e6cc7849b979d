"""fedkube.reducer"""
