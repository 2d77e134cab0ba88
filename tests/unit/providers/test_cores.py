"""The cores other work leaves free: the load average less this process's own CPU use, smoothed alike."""

from chatgate.providers.local.cores import FreeCores
from chatgate.providers.local.scheduler import ThreadBudget


class Machine:
    """A fake clock, load average and process CPU time, moved by hand."""

    def __init__(self, load: float) -> None:
        self.now = 0.0
        self.load = load
        self.spent = 0.0

    def run(self, seconds: float, own_cores: float) -> None:
        self.now += seconds
        self.spent += seconds * own_cores

    def gauge(self, cores: int = 2) -> FreeCores:
        return FreeCores(
            cores=cores, load=lambda: self.load, cpu_seconds=lambda: self.spent, clock=lambda: self.now
        )


def test_an_idle_machine_leaves_every_core() -> None:
    machine = Machine(load=0.1)
    free = machine.gauge()
    machine.run(1.0, own_cores=0.0)
    assert free() == 2


def test_our_own_work_in_the_load_is_not_counted_as_other_work() -> None:
    machine = Machine(load=2.0)  # a lone stream of ours on both cores
    free = machine.gauge()
    machine.run(1.0, own_cores=2.0)
    assert free() == 2


def test_other_processes_on_the_cores_leave_one() -> None:
    machine = Machine(load=8.0)  # a shared machine: six busy processes besides us
    free = machine.gauge()
    machine.run(1.0, own_cores=1.0)
    assert free() == 1
    machine.load = 3.0  # one other process at full tilt, and our two threads
    machine.run(1.0, own_cores=2.0)
    assert free() == 1


def test_it_is_measured_at_most_once_a_second() -> None:
    machine = Machine(load=0.0)
    free = machine.gauge()
    machine.run(1.0, own_cores=0.0)
    assert free() == 2
    machine.load = 8.0
    machine.run(0.5, own_cores=0.0)
    assert free() == 2  # the last measure still
    machine.run(0.5, own_cores=0.0)
    assert free() == 1


def test_a_step_spreads_over_no_more_threads_than_the_free_cores() -> None:
    cores = 2
    budget = ThreadBudget(2, free=lambda: cores)
    budget.begin()
    assert budget.share() == 2
    cores = 1
    assert budget.share() == 1
    budget.begin()  # two sequences taken: one thread each, whatever the machine leaves
    cores = 2
    assert budget.share() == 1
