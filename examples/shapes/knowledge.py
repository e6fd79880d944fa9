"""Real-world entities with a visual colour and shape, and the knowledge graph built over them.

Every entity has exactly one colour and one shape from the world's vocabularies (see ``palette``).
A fixed quarter of them is *held out*: those entities never appear in an image caption; they exist
only in the knowledge graph, so a model can only draw them through their knowledge-graph vectors.
Every held-out entity shares its (colour, shape) pair with at least one seen entity, and every pair
has at least four seen entities, so that a model learns how an entity's vector maps to its look from
many examples, not from a name's characters (which held-out names share with other entities:
海王星 with 海星, 瓷砖 with 砖块).
"""

from __future__ import annotations

from dataclasses import dataclass

from .palette import BACKGROUNDS, COLOURS, SHAPES


@dataclass(frozen=True)
class Entity:
    name: str
    colour: str
    shape: str
    category: str
    held_out: bool = False


def _e(name: str, colour: str, shape: str, category: str, held_out: bool = False) -> Entity:
    return Entity(name, colour, shape, category, held_out)


ENTITIES: tuple[Entity, ...] = (
    # 圆形
    _e("番茄", "红色", "圆形", "蔬菜"),
    _e("苹果", "红色", "圆形", "水果"),
    _e("樱桃", "红色", "圆形", "水果", held_out=True),
    _e("红灯", "红色", "圆形", "交通信号灯"),
    _e("太阳", "红色", "圆形", "天体"),
    _e("山楂", "红色", "圆形", "水果"),
    _e("荔枝", "红色", "圆形", "水果"),
    _e("灯笼", "红色", "圆形", "物品"),
    _e("石榴", "红色", "圆形", "水果", held_out=True),
    _e("橙子", "橙色", "圆形", "水果"),
    _e("橘子", "橙色", "圆形", "水果", held_out=True),
    _e("篮球", "橙色", "圆形", "球类"),
    _e("南瓜", "橙色", "圆形", "蔬菜"),
    _e("杏子", "橙色", "圆形", "水果"),
    _e("咸蛋黄", "橙色", "圆形", "食物"),
    _e("枇杷", "橙色", "圆形", "水果", held_out=True),
    _e("柠檬", "黄色", "圆形", "水果"),
    _e("网球", "黄色", "圆形", "球类", held_out=True),
    _e("月亮", "黄色", "圆形", "天体"),
    _e("硬币", "黄色", "圆形", "物品"),
    _e("黄灯", "黄色", "圆形", "交通信号灯"),
    _e("向日葵", "黄色", "圆形", "花卉"),
    _e("金币", "黄色", "圆形", "物品"),
    _e("柚子", "黄色", "圆形", "水果", held_out=True),
    _e("西瓜", "绿色", "圆形", "水果"),
    _e("青柠", "绿色", "圆形", "水果", held_out=True),
    _e("豌豆", "绿色", "圆形", "蔬菜"),
    _e("绿灯", "绿色", "圆形", "交通信号灯"),
    _e("卷心菜", "绿色", "圆形", "蔬菜"),
    _e("青提", "绿色", "圆形", "水果"),
    _e("橄榄", "绿色", "圆形", "水果"),
    _e("荷叶", "绿色", "圆形", "植物", held_out=True),
    _e("蓝莓", "蓝色", "圆形", "水果"),
    _e("地球", "蓝色", "圆形", "天体"),
    _e("海王星", "蓝色", "圆形", "天体", held_out=True),
    _e("弹珠", "蓝色", "圆形", "玩具"),
    _e("瓶盖", "蓝色", "圆形", "物品"),
    _e("水球", "蓝色", "圆形", "玩具"),
    _e("蓝宝石", "蓝色", "圆形", "宝石", held_out=True),
    _e("葡萄", "紫色", "圆形", "水果"),
    _e("李子", "紫色", "圆形", "水果", held_out=True),
    _e("茄子", "紫色", "圆形", "蔬菜"),
    _e("洋葱", "紫色", "圆形", "蔬菜"),
    _e("山竹", "紫色", "圆形", "水果"),
    _e("桑葚", "紫色", "圆形", "水果"),
    _e("西梅", "紫色", "圆形", "水果", held_out=True),
    # 正方形
    _e("骰子", "红色", "正方形", "玩具"),
    _e("红包", "红色", "正方形", "物品"),
    _e("印章", "红色", "正方形", "文具"),
    _e("窗花", "红色", "正方形", "物品"),
    _e("福字", "红色", "正方形", "物品"),
    _e("消防箱", "红色", "正方形", "物品"),
    _e("请柬", "红色", "正方形", "物品", held_out=True),
    _e("砖块", "橙色", "正方形", "建材"),
    _e("纸箱", "橙色", "正方形", "物品"),
    _e("快递盒", "橙色", "正方形", "物品"),
    _e("吐司", "橙色", "正方形", "食物"),
    _e("木箱", "橙色", "正方形", "物品"),
    _e("果汁盒", "橙色", "正方形", "食物", held_out=True),
    _e("便利贴", "黄色", "正方形", "文具"),
    _e("奶酪片", "黄色", "正方形", "食物", held_out=True),
    _e("黄油", "黄色", "正方形", "食物"),
    _e("金条", "黄色", "正方形", "物品"),
    _e("方便面", "黄色", "正方形", "食物"),
    _e("海绵", "黄色", "正方形", "物品"),
    _e("鸡蛋糕", "黄色", "正方形", "甜点", held_out=True),
    _e("黑板", "绿色", "正方形", "文具"),
    _e("绿豆糕", "绿色", "正方形", "甜点"),
    _e("麻将", "绿色", "正方形", "玩具"),
    _e("草皮", "绿色", "正方形", "植物"),
    _e("台球桌", "绿色", "正方形", "运动器材"),
    _e("抹茶饼", "绿色", "正方形", "甜点", held_out=True),
    _e("菜地", "绿色", "正方形", "地形", held_out=True),
    _e("魔方", "蓝色", "正方形", "玩具"),
    _e("冰块", "蓝色", "正方形", "食物"),
    _e("光伏板", "蓝色", "正方形", "建材"),
    _e("泳池", "蓝色", "正方形", "建筑"),
    _e("车牌", "蓝色", "正方形", "物品"),
    _e("瓷砖", "蓝色", "正方形", "建材", held_out=True),
    _e("门牌", "蓝色", "正方形", "物品", held_out=True),
    _e("紫菜", "紫色", "正方形", "食物"),
    _e("芋头糕", "紫色", "正方形", "甜点"),
    _e("软糖", "紫色", "正方形", "甜点"),
    _e("紫檀盒", "紫色", "正方形", "物品"),
    _e("丝巾", "紫色", "正方形", "服饰"),
    _e("香芋派", "紫色", "正方形", "甜点", held_out=True),
    _e("手帕", "紫色", "正方形", "服饰", held_out=True),
    # 三角形
    _e("三角警示牌", "红色", "三角形", "交通标志"),
    _e("红领巾", "红色", "三角形", "服饰"),
    _e("让行标志", "红色", "三角形", "交通标志"),
    _e("生日帽", "红色", "三角形", "服饰"),
    _e("辣椒", "红色", "三角形", "蔬菜"),
    _e("屋顶", "红色", "三角形", "建筑"),
    _e("草莓", "红色", "三角形", "水果", held_out=True),
    _e("披萨", "橙色", "三角形", "食物"),
    _e("帐篷", "橙色", "三角形", "物品"),
    _e("胡萝卜", "橙色", "三角形", "蔬菜"),
    _e("沙丘", "橙色", "三角形", "地形"),
    _e("火山", "橙色", "三角形", "地形"),
    _e("芒果片", "橙色", "三角形", "食物", held_out=True),
    _e("金字塔", "黄色", "三角形", "建筑"),
    _e("警告标志", "黄色", "三角形", "交通标志"),
    _e("三明治", "黄色", "三角形", "食物"),
    _e("蛋糕块", "黄色", "三角形", "甜点"),
    _e("麦穗", "黄色", "三角形", "植物"),
    _e("玉米片", "黄色", "三角形", "食物", held_out=True),
    _e("芝士角", "黄色", "三角形", "食物", held_out=True),
    _e("粽子", "绿色", "三角形", "食物"),
    _e("松树", "绿色", "三角形", "植物"),
    _e("杉树", "绿色", "三角形", "植物"),
    _e("山坡", "绿色", "三角形", "地形"),
    _e("竹笋", "绿色", "三角形", "蔬菜"),
    _e("圣诞树", "绿色", "三角形", "植物", held_out=True),
    _e("雪松", "绿色", "三角形", "植物", held_out=True),
    _e("三角板", "蓝色", "三角形", "文具"),
    _e("帆船", "蓝色", "三角形", "交通工具"),
    _e("冰山", "蓝色", "三角形", "地形"),
    _e("鲨鱼鳍", "蓝色", "三角形", "动物"),
    _e("蓝旗", "蓝色", "三角形", "物品"),
    _e("风筝", "蓝色", "三角形", "玩具", held_out=True),
    _e("紫水晶", "紫色", "三角形", "宝石"),
    _e("巫师帽", "紫色", "三角形", "服饰"),
    _e("甜筒", "紫色", "三角形", "甜点"),
    _e("紫藤", "紫色", "三角形", "花卉"),
    _e("薰衣草", "紫色", "三角形", "花卉"),
    _e("紫苏叶", "紫色", "三角形", "植物", held_out=True),
    # 星形
    _e("五角星", "红色", "星形", "符号"),
    _e("红星", "红色", "星形", "符号"),
    _e("勋章", "红色", "星形", "物品"),
    _e("一品红", "红色", "星形", "花卉"),
    _e("警徽", "红色", "星形", "符号"),
    _e("枫叶", "红色", "星形", "植物", held_out=True),
    _e("海星", "橙色", "星形", "动物"),
    _e("八角", "橙色", "星形", "食物"),
    _e("万寿菊", "橙色", "星形", "花卉"),
    _e("金盏花", "橙色", "星形", "花卉"),
    _e("凤仙花", "橙色", "星形", "花卉"),
    _e("烟火", "橙色", "星形", "物品", held_out=True),
    _e("星星", "黄色", "星形", "天体"),
    _e("幸运星", "黄色", "星形", "玩具"),
    _e("迎春花", "黄色", "星形", "花卉"),
    _e("黄星", "黄色", "星形", "符号"),
    _e("菊花", "黄色", "星形", "花卉"),
    _e("杨桃", "黄色", "星形", "水果", held_out=True),
    _e("油菜花", "黄色", "星形", "花卉", held_out=True),
    _e("秋葵", "绿色", "星形", "蔬菜"),
    _e("四叶草", "绿色", "星形", "植物"),
    _e("绿星", "绿色", "星形", "符号"),
    _e("薄荷", "绿色", "星形", "植物"),
    _e("蕨叶", "绿色", "星形", "植物"),
    _e("仙人球", "绿色", "星形", "植物", held_out=True),
    _e("蓝星花", "蓝色", "星形", "花卉"),
    _e("矢车菊", "蓝色", "星形", "花卉"),
    _e("冰晶", "蓝色", "星形", "自然现象"),
    _e("勿忘我", "蓝色", "星形", "花卉"),
    _e("风信子", "蓝色", "星形", "花卉"),
    _e("琉璃苣", "蓝色", "星形", "花卉", held_out=True),
    _e("桔梗花", "紫色", "星形", "花卉"),
    _e("丁香花", "紫色", "星形", "花卉"),
    _e("海胆", "紫色", "星形", "动物"),
    _e("紫罗兰", "紫色", "星形", "花卉"),
    _e("牵牛花", "紫色", "星形", "花卉"),
    _e("紫菀", "紫色", "星形", "花卉", held_out=True),
)

ENTITY_BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}

CATEGORY_PARENTS: dict[str, str] = {
    "水果": "食物",
    "蔬菜": "食物",
    "食物": "物体",
    "天体": "自然",
    "植物": "自然",
    "动物": "自然",
    "交通信号灯": "交通设施",
    "交通标志": "交通设施",
    "交通设施": "物体",
    "球类": "运动器材",
    "运动器材": "物体",
    "玩具": "物体",
    "文具": "物体",
    "建材": "物体",
    "建筑": "物体",
    "物品": "物体",
    "符号": "物体",
    "花卉": "植物",
    "甜点": "食物",
    "宝石": "物体",
    "服饰": "物体",
    "交通工具": "物体",
    "地形": "自然",
    "自然现象": "自然",
}

MEASURE_WORDS: dict[str, str] = {
    "水果": "颗", "蔬菜": "个", "食物": "块", "甜点": "块", "天体": "颗", "植物": "棵", "花卉": "朵",
    "动物": "只", "交通信号灯": "盏", "交通标志": "块", "球类": "个", "运动器材": "张", "玩具": "个",
    "文具": "张", "建材": "块", "建筑": "座", "物品": "个", "符号": "颗", "宝石": "颗", "服饰": "条",
    "交通工具": "艘", "地形": "座", "自然现象": "片",
}
"""The measure word captions use for an entity of each category (一颗樱桃, 一只海星, 一张黑板)."""

WARM_COLOURS = frozenset({"红色", "橙色", "黄色"})


def seen_entities() -> list[Entity]:
    return [e for e in ENTITIES if not e.held_out]


def held_out_entities() -> list[Entity]:
    return [e for e in ENTITIES if e.held_out]


def build_triples() -> list[tuple[str, str, str]]:
    """All (head, relation, tail) triples of the graph, in a fixed order.

    Entities link to their colour, shape and category; categories form a small is-a tree; colour
    and shape nodes are typed and linked to each other (warm/cool tone, neighbouring hues, corner
    counts), so that TransE sees structure beyond the attribute edges.
    """
    triples: list[tuple[str, str, str]] = []
    for e in ENTITIES:
        triples.append((e.name, "颜色", e.colour))
        triples.append((e.name, "形状", e.shape))
        triples.append((e.name, "类别", e.category))
    for child, parent in CATEGORY_PARENTS.items():
        triples.append((child, "上位类", parent))
    for c in COLOURS:
        triples.append((c.name, "类型", "颜色"))
        triples.append((c.name, "色调", "暖色" if c.name in WARM_COLOURS else "冷色"))
    for left, right in zip(COLOURS, COLOURS[1:], strict=False):
        triples.append((left.name, "相邻色", right.name))
    for b in BACKGROUNDS:
        triples.append((b.name, "类型", "颜色"))
        triples.append((b.name, "色调", "无彩色"))
    for s in SHAPES:
        triples.append((s.name, "类型", "形状"))
        triples.append((s.name, "角的数量", s.corners))
    return triples


def graph_nodes(triples: list[tuple[str, str, str]]) -> list[str]:
    """Every node of the graph, in order of first appearance (entities first)."""
    nodes: dict[str, None] = {}
    for head, _, tail in triples:
        nodes.setdefault(head, None)
        nodes.setdefault(tail, None)
    return list(nodes)


def graph_relations(triples: list[tuple[str, str, str]]) -> list[str]:
    relations: dict[str, None] = {}
    for _, relation, _ in triples:
        relations.setdefault(relation, None)
    return list(relations)
