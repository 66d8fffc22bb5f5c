"""The smoke suite `provision test` runs against provisioned hosts with pytest-testinfra."""
