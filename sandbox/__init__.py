"""Code-execution backends behind one interface (docker, bubblewrap, subprocess).

Empty until the sandbox issue lands; the package exists so the layout is final.
"""
