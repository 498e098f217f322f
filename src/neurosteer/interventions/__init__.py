"""What every intervention is, whatever the method: the `Intervention` protocol with its steering
handle (`protocol`), and the undo of an exact weight edit (`handles`). It knows no concrete
method."""
