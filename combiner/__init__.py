"""fedkube.combiner"""
