"""AppZoo: the EasyNLP-compatible `easynlp` command; applications plug in via the `easynlp.appzoo` entry-point group."""
