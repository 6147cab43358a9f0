"""The route stage of a router recipe (``routes_to:``): its experts resolved, checked and pinned before training."""
