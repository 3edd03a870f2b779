"""IDEAL's semi-supervised fine-tuning stopped by too many NaN/Inf steps: a message, not a traceback."""
import os

import pytest

from tiny_nnunet_data import make_trainer


def test_a_diverging_semi_supervised_run_ends_with_a_message(tiny_nnunet_env, capsys):
    from nnunet_ssl_trainers.ideal_semi import IDEALSemiSupervisedTrainer
    env = tiny_nnunet_env
    env.mp.setenv("NNUNET_SSL_SETTINGS", "label_budget=3,budget_rest=unlabeled,batch_size=2,initial_lr=1e6,"
                  "num_epochs=20,num_iterations_per_epoch=3,num_val_iterations_per_epoch=1,save_every=1,"
                  "max_nonfinite_in_a_row=3,final_validation=False")
    trainer = make_trainer(IDEALSemiSupervisedTrainer, env.plans, env.dataset_json)
    with pytest.raises(SystemExit) as e:
        trainer.run_training()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "3 steps in a row had a NaN/Inf loss or gradient" in err and "Traceback" not in err
    assert "initial_lr is 1e+06" in err
    assert ("none is usable" in err) or ("The last usable checkpoint" in err)
    assert trainer.initial_weight_norm and trainer.initial_weight_norm > 0
    assert os.path.isdir(trainer.output_folder)
