"""A small package of "your own code" for optimlab's open-house example: a network (``nets``), a data
loader (``data``) and an optimizer (``optim``), named from a study by import path
(``mycode.nets:SmallCNN``, ``mycode.data:load``, ``mycode.optim:SignMomentum``)."""
