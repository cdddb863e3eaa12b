"""HAM10000, ISIC 2018 test, DermNet and PAD-UFES-20 loaders, on generated files and on the real data."""

from __future__ import annotations

import pytest

from skintriage.data.records import ManifestError
from skintriage.data.sources import SOURCES, FetchError, get_source
from skintriage.data.sources.files import MetadataError
from skintriage.data.splits import assign_splits, audit_leakage, hash_images
from skintriage.data.taxonomy import UnknownLabelError
from tests.helpers import shared_data, write_image

HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset\n"


def write_ham_release(root, rows):
    """The official layout: metadata CSV beside two image part folders."""
    (root / "HAM10000_metadata.csv").write_text(HAM_HEADER + "".join(rows))
    for i, row in enumerate(rows):
        image_id = row.split(",")[1]
        write_image(root / f"HAM10000_images_part_{1 + i % 2}" / f"{image_id}.jpg", seed=i)


HAM_ROWS = [
    "HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp,vidir_modern\n",
    "HAM_0000118,ISIC_0025030,bkl,histo,80.0,male,scalp,vidir_modern\n",
    "HAM_0002730,ISIC_0026769,mel,histo,,female,unknown,rosendahl\n",
    "HAM_0001466,ISIC_0031633,akiec,histo,75.0,unknown,ear,vidir_modern\n",
]


def test_ham10000_official_layout(tmp_path):
    write_ham_release(tmp_path, HAM_ROWS)
    frame = get_source("ham10000").load(tmp_path).frame
    assert frame["image"].tolist()[:2] == [
        "HAM10000_images_part_1/ISIC_0027419.jpg",
        "HAM10000_images_part_2/ISIC_0025030.jpg",
    ]
    assert frame["diagnosis"].tolist() == ["bkl", "bkl", "mel", "akiec"]
    assert frame["triage_group"].tolist() == ["benign", "benign", "other_malignant", "other_malignant"]
    assert frame["sex"].tolist() == ["male", "male", "female", None]
    assert frame["body_site"].tolist() == ["scalp", "scalp", None, "ear"]
    assert frame["acquisition"].unique().tolist() == ["dermoscopic"]
    assert frame["origin"].iloc[2] == "HAM10000_metadata.csv:4"


def test_ham10000_subset_layout_with_file_column(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "ham10000_subset_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset,file\nHAM_1,ISIC_1,nv,follow_up,45,male,trunk,x,imgs/a.jpg\n"
    )
    assert get_source("ham10000").load(tmp_path).frame["image"].tolist() == ["imgs/a.jpg"]


def test_ham10000_bad_inputs_name_the_culprit(tmp_path):
    write_ham_release(tmp_path, [*HAM_ROWS[:2], "HAM_9,ISIC_9,mole,histo,50,male,back,x\n"])
    with pytest.raises(UnknownLabelError, match=r"source 'ham10000': label 'mole' \(HAM10000_metadata.csv:4\)"):
        get_source("ham10000").load(tmp_path)
    (tmp_path / "HAM10000_metadata.csv").write_text(HAM_HEADER + HAM_ROWS[0] + "HAM_1,ISIC_1,nv\n")
    with pytest.raises(MetadataError, match=r"HAM10000_metadata.csv:3: expected 8 fields, found 3"):
        get_source("ham10000").load(tmp_path)
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion,image_id,dx\nHAM_1,ISIC_1,nv\n")
    with pytest.raises(MetadataError, match=r"missing column\(s\) 'lesion_id'"):
        get_source("ham10000").load(tmp_path)
    (tmp_path / "HAM10000_metadata.csv").write_text(HAM_HEADER + HAM_ROWS[0] + 'HAM_1,"ISIC_1,nv\n')
    with pytest.raises(MetadataError, match=r"HAM10000_metadata.csv:3"):
        get_source("ham10000").load(tmp_path)
    (tmp_path / "HAM10000_metadata.csv").unlink()
    with pytest.raises(MetadataError, match="no metadata file found"):
        get_source("ham10000").load(tmp_path)


def test_ham10000_missing_image_is_named(tmp_path):
    write_ham_release(tmp_path, HAM_ROWS)
    (tmp_path / "HAM10000_images_part_2" / "ISIC_0025030.jpg").unlink()
    with pytest.raises(ManifestError, match=r"HAM10000_metadata.csv:3 \(ISIC_0025030.jpg\): file not found"):
        get_source("ham10000").load(tmp_path)


def test_isic2018_test_one_hot_ground_truth(tmp_path):
    header = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
    rows = "ISIC_0034524,0.0,1.0,0.0,0.0,0.0,0.0,0.0\nISIC_0035068,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
    (tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv").write_text(header + rows)
    for image_id in ("ISIC_0034524", "ISIC_0035068"):
        write_image(tmp_path / "ISIC2018_Task3_Test_Input" / f"{image_id}.jpg")
    frame = get_source("isic2018_test").load(tmp_path).frame
    assert frame["diagnosis"].tolist() == ["nv", "mel"]
    assert frame["split"].unique().tolist() == ["test"]
    assert frame["score_weight"].tolist() == [1.0, 0.0]
    (tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv").write_text(header + "ISIC_0034524,1.0,1.0,0,0,0,0,0\n")
    with pytest.raises(MetadataError, match=r"ISIC2018_Task3_Test_GroundTruth.csv:2: expected exactly one class"):
        get_source("isic2018_test").load(tmp_path)


def test_dermnet_with_metadata_and_from_folders_alone(tmp_path):
    files = ["images/basal_cell_carcinoma/0616.jpg", "images/pilar_cyst/p1.jpg", "images/cutaneous_horn/316.jpg"]
    for i, file in enumerate(files):
        write_image(tmp_path / file, seed=i)
    (tmp_path / "metadata.csv").write_text(
        "file,dermnet_class,malignancy_group,md5_original,duplicate_of\n"
        f"{files[0]},Basal cell carcinoma,malignant,aa,\n{files[1]},Pilar cyst,benign_mimic_other_category,bb,\n"
        f"{files[2]},Cutaneous horn,benign,aa,{files[0]}\n"
    )
    frame = get_source("dermnet").load(tmp_path).frame
    assert frame["triage_group"].tolist() == ["other_malignant", "benign", "benign"]
    assert frame["lesion_id"].tolist() == ["md5:aa", "md5:bb", "md5:aa"]  # byte-identical copies share a group
    assert frame["acquisition"].unique().tolist() == ["clinical"]
    (tmp_path / "metadata.csv").unlink()
    frame = get_source("dermnet").load(tmp_path).frame
    assert sorted(frame["raw_label"]) == ["Basal cell carcinoma", "Cutaneous horn", "Pilar cyst"]
    write_image(tmp_path / "images" / "mystery_topic" / "x.jpg")
    with pytest.raises(UnknownLabelError, match="'Mystery topic'"):
        get_source("dermnet").load(tmp_path)


def test_pad_ufes_20_metadata_and_images(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "patient_id,lesion_id,age,gender,fitspatrick,region,diagnostic,img_id\n"
        "PAT_46,881,55,FEMALE,3.0,NECK,BCC,PAT_46_881_939.png\n"
        "PAT_46,882,55,FEMALE,3.0,FACE,ACK,PAT_46_882_940.png\n"
        "PAT_9,12,,,,ARM,NEV,PAT_9_12_1.png\n"
    )
    write_image(tmp_path / "imgs_part_1" / "PAT_46_881_939.png")
    write_image(tmp_path / "imgs_part_2" / "PAT_46_882_940.png", seed=1)
    with pytest.raises(ManifestError, match=r"metadata.csv:4 \(PAT_9_12_1.png\): file not found"):
        get_source("pad_ufes_20").load(tmp_path)
    manifest = get_source("pad_ufes_20").load(tmp_path, on_missing="report")
    frame = manifest.frame
    assert manifest.missing_images == ["PAT_9_12_1"]
    assert frame["diagnosis"].tolist() == ["bcc", "akiec", "nv"]
    assert frame["skin_type"].tolist() == ["III", "III", None]
    assert frame["patient_id"].tolist() == ["PAT_46", "PAT_46", "PAT_9"]
    assert frame["sex"].tolist() == ["female", "female", None]


def test_every_source_is_documented():
    assert {"ham10000", "isic2018_test", "dermnet", "pad_ufes_20"} <= set(SOURCES)
    for source in SOURCES.values():
        assert source.title and source.description and source.licence, source.name
        assert source.citation or source.name == "folder", source.name  # a user's own images have none
        assert len(source.obtain) > 40, source.name


def test_fetch_fails_fast_with_the_manual_steps(tmp_path, monkeypatch):
    from skintriage.data.sources import ham10000

    monkeypatch.setattr(ham10000, "DATAVERSE_URL", "http://127.0.0.1:9/ham10000.zip")
    with pytest.raises(
        FetchError, match=r"(?s)could not download http://127.0.0.1:9/ham10000.zip.*doi.org/10.7910/DVN/DBW86T"
    ):
        get_source("ham10000").fetch(tmp_path)
    assert not any(tmp_path.iterdir())  # no half-written file left behind


def test_real_ham10000_subset():
    root = shared_data("ham10000_isic2018_224")
    frame = get_source("ham10000").load(root).frame
    assert len(frame) == 5984 and frame["lesion_id"].nunique() == 5984
    assert frame["diagnosis"].value_counts().to_dict() == {
        "nv": 4323,
        "bkl": 583,
        "mel": 491,
        "bcc": 264,
        "akiec": 183,
        "vasc": 80,
        "df": 60,
    }


def test_real_isic2018_test_set():
    root = shared_data("ham10000_isic2018_224")
    frame = get_source("isic2018_test").load(root).frame
    assert len(frame) == 1512 and frame["score_weight"].sum() == 1511
    assert frame["diagnosis"].value_counts().to_dict() == {
        "nv": 909,
        "bkl": 217,
        "mel": 171,
        "bcc": 93,
        "df": 44,
        "akiec": 43,
        "vasc": 35,
    }


def test_real_dermnet_every_topic_mapped_and_split_without_leakage():
    root = shared_data("dermnet_clinical")
    source = get_source("dermnet")
    manifest = source.load(root)
    frame = manifest.frame
    assert len(frame) == 1237 and frame["raw_label"].nunique() == 84
    assert frame["triage_group"].notna().all()
    assert frame["triage_group"].value_counts().to_dict() == {"benign": 671, "other_malignant": 566}
    hashes = hash_images(manifest)
    split = assign_splits(manifest, fractions=source.split_fractions, seed=0, hashes=hashes)
    assert set(split.frame["split"]) == {"train", "val", "test"}
    assert audit_leakage(split, hashes).leaks == 0


def test_real_pad_ufes_20_metadata_without_images():
    root = shared_data("pad_ufes_20")
    manifest = get_source("pad_ufes_20").load(root, on_missing="report")
    assert len(manifest) == 2298 and len(manifest.missing_images) == 2298
    # lesion_id numbers are reused across patients (250 of them, with different diagnoses), so a lesion
    # is identified by patient and number: 1,891 lesions, not the 1,641 distinct numbers.
    assert manifest.frame["patient_id"].nunique() == 1373 and manifest.frame["lesion_id"].nunique() == 1891
