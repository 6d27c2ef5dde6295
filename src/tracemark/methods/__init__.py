"""The methods: one package each, the same surface (:mod:`.base`), found by name (:mod:`.registry`).

``from tracemark.methods import tracker`` gives a method's own functions (named as in its
paper); ``registry.get("tracker")`` gives the object every method shares a shape with.
"""
