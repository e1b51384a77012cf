import multiprocessing as mp
# Bound methods, classmethods and staticmethods of script classes as tasks; dataclass instances as
# arguments and results; an instance's state travels with its bound method.
import dataclasses


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int

    def norm1(self):
        return abs(self.x) + abs(self.y)


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def scale(self, p):
        return Point(p.x * self.factor, p.y * self.factor)

    @classmethod
    def unit(cls, n):
        return cls(n).factor

    @staticmethod
    def origin(_):
        return Point(0, 0)


if __name__ == "__main__":
    points = [Point(i, -i) for i in range(4)]
    with mp.Pool(2) as pool:
        print(pool.map(Scaler(3).scale, points))
        print(pool.map(Point.norm1, points))
        print(pool.map(Scaler.unit, [5, 6]))
        print(pool.map(Scaler.origin, [None]))
        print(pool.map(str.upper, ["abc", "de"]))
