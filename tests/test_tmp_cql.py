import time
from tests.test_learning import dirs, final_return, pendulum_dataset  # noqa: F401
from offline_mbrl import TrainerConfiguration

def test_cql(dirs, pendulum_dataset):  # noqa: F811
    t = time.time()
    score = final_return(TrainerConfiguration(
        env_name="Pendulum-v1", mode="cql", dataset=str(pendulum_dataset), offline_epochs=3,
        steps_per_epoch=1000, test_episodes=5, seeds=tuple(range(4)),
        agent={"n_hidden_layers": 2, "n_hidden_units": 128, "cql_n_actions": 4}))
    print("CQL", score, time.time() - t)
