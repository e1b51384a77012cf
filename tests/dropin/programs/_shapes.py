"""A helper module beside the programs (not a program itself: its name starts with _)."""
import math


class Circle:
    def __init__(self, r):
        self.r = r

    def area(self):
        return round(math.pi * self.r ** 2, 3)


def area(shape):
    return shape.area()
