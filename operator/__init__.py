"""fedkube.operator"""
